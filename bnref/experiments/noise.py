"""Chapter 6: the noise of Santurkar et al.'s "noisy BN", injected after each norm of the MLP.

Both helpers return ``noise(l, H, rng, xp) -> (scale, shift)``, each of shape (H,), for the
``noise`` argument of :class:`bnref.mlp.MLP` (which applies ``z <- z * scale + shift`` after
the norm of hidden layer ``l``, in training only):

- :func:`nonstationary_noise`: the paper's, ``scale ~ U(1, 1 + strength)``;
- :func:`centered_noise`: centred so that the noise-free eval-mode network is the average of
  the networks seen in training (what chapter 6 uses).

``_FrozenNoise`` repeats one draw, so that a measurement that evaluates the network twice
(:func:`~bnref.experiments.training.ics_gradient_change`,
:func:`~bnref.experiments.training.landscape_along_gradient`) sees the same noise both times.
"""
import numpy as np

__all__ = ["nonstationary_noise", "centered_noise"]


def nonstationary_noise(strength=1.0):
    """Santurkar et al.'s noise: a random per-unit scale and shift, resampled every step.

    Returns ``noise(l, H, rng, xp) -> (scale, shift)``, each of shape (H,), with
    ``scale ~ U(1, 1 + strength)`` and ``shift ~ U(-strength, strength)``: after BN the
    distribution keeps changing, with non-zero mean and non-unit variance, at every step.

    Examples
    --------
    >>> import numpy as np
    >>> scale, shift = nonstationary_noise(0.5)(0, 4, np.random.default_rng(0), np)
    >>> scale.shape, bool((scale >= 1).all() and (scale <= 1.5).all())
    ((4,), True)
    """
    def noise(l, H, rng, xp):
        scale = rng.uniform(1.0, 1.0 + strength, size=H)
        shift = rng.uniform(-strength, strength, size=H)
        return xp.asarray(scale), xp.asarray(shift)
    return noise


def centered_noise(strength=1.0):
    """A per-unit variant of Santurkar et al.'s "noisy BN", centred so that eval mode is its mean.

    Santurkar et al. add i.i.d. noise to every activation; this draws one scale and one shift
    per unit and step, shared by the batch (the distribution of each unit moves as a whole).

    Returns ``noise(l, H, rng, xp) -> (scale, shift)`` for :class:`bnref.mlp.MLP`: at every
    training step each hidden unit gets a fresh random scale ``1 + strength * U(-1/2, 1/2)``
    and shift ``strength * U(-1, 1)`` after its normalisation, so the distribution that the
    next layer sees has a non-zero mean and a non-unit variance that change at every step.
    Their averages over steps are 1 and 0: the noise-free eval-mode network is the average
    network. (:func:`nonstationary_noise` draws scales in ``[1, 1 + strength]``, whose
    mean is not 1, so its eval-mode network differs from what it was trained as.)

    Examples
    --------
    >>> import numpy as np
    >>> scale, shift = centered_noise(1.0)(0, 10_000, np.random.default_rng(0), np)
    >>> bool(abs(scale.mean() - 1.0) < 0.01 and abs(shift.mean()) < 0.02)   # the averages
    True
    >>> bool(scale.min() >= 0.5 and scale.max() <= 1.5)
    True
    """
    def noise(l, H, rng, xp):
        scale = 1.0 + strength * rng.uniform(-0.5, 0.5, size=H)
        shift = strength * rng.uniform(-1.0, 1.0, size=H)
        return xp.asarray(scale), xp.asarray(shift)
    return noise


class _FrozenNoise:
    """Within ``with``: the net's injected noise is drawn once per layer and then repeated, so
    two evaluations of the same batch see the same noise (and the net's own RNG is untouched)."""

    def __init__(self, net, seed=0):
        self.net, self.seed, self.cache = net, seed, {}

    def __enter__(self):
        self.original = self.net.noise
        if self.original is not None:
            # a private RNG: drawing the frozen sample must not advance the net's own RNG,
            # or measuring would change the rest of training
            rng = np.random.default_rng(self.seed)

            def frozen(l, H, _rng, xp):
                if l not in self.cache:
                    self.cache[l] = self.original(l, H, rng, xp)
                return self.cache[l]
            self.net.noise = frozen
        return self

    def __exit__(self, *exc):
        self.net.noise = self.original
