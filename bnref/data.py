"""Real data for the course: scikit-learn's bundled 8x8 handwritten digits (no download)."""
import numpy as np

from ._optional import require

__all__ = ["load_digits"]


def load_digits(seed=0, test_size=0.25):
    """The 1,797 8x8 digit images of scikit-learn, split into train and test sets.

    The images ship inside scikit-learn, so this works offline. Pixels are scaled from
    0..16 to [0, 1] but *not* standardised: the chapters show what normalising does.

    Parameters
    ----------
    seed : int, default 0
        Seed of the stratified shuffle split.
    test_size : float, default 0.25
        Fraction of each class held out.

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarray
        X of shape (n, 64), float64 in [0, 1]; y of int64 labels 0..9.

    Examples
    --------
    >>> X_train, y_train, X_test, y_test = load_digits()
    >>> X_train.shape, X_test.shape
    ((1347, 64), (450, 64))
    """
    datasets = require("sklearn.datasets", "bnref.data.load_digits")
    from sklearn.model_selection import train_test_split

    digits = datasets.load_digits()
    X = digits.data.astype(np.float64) / 16.0          # (1797, 64)
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y)
    return X_train, y_train, X_test, y_test
