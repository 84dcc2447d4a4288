"""End to end on real data: Meta-Weight-Net-style reweighting on digits with 40 % label noise."""

import numpy as np
import pytest

from recipes.examples.noisy_labels import NoisyLabelsConfig, load_noisy_digits, run


def test_split_and_noise_are_as_configured():
    cfg = NoisyLabelsConfig(seed=3)
    d = load_noisy_digits(cfg)
    assert len(d["y_meta"]) == 100 and np.bincount(d["y_meta"].numpy()).tolist() == [10] * 10
    noisy = d["noisy"].numpy()
    assert 0.35 < noisy.mean() < 0.45
    assert (d["y_train"][d["noisy"]] != d["y_train_true"][d["noisy"]]).all()
    assert (d["y_train"][~d["noisy"]] == d["y_train_true"][~d["noisy"]]).all()


@pytest.mark.slow
def test_meta_weighting_beats_erm_and_separates_noisy_samples():
    meta = [run(NoisyLabelsConfig(seed=s, strategy="lookahead")) for s in (0, 1, 2)]
    erm = [run(NoisyLabelsConfig(seed=s, strategy="uniform")) for s in (0, 1, 2)]
    acc_meta = np.mean([r["test_acc"] for r in meta])
    acc_erm = np.mean([r["test_acc"] for r in erm])
    auroc = np.mean([r["auroc"] for r in meta])
    assert acc_meta > acc_erm + 0.05, (acc_meta, acc_erm)
    assert auroc >= 0.75, auroc
    assert all(r["weight_clean_mean"] > r["weight_noisy_mean"] for r in meta)


def test_bad_config_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="noise"):
        NoisyLabelsConfig(noise=1.5)
    with pytest.raises(ValidationError, match="strategy"):
        NoisyLabelsConfig(strategy="adam")
    with pytest.raises(ValidationError, match="epochs"):
        NoisyLabelsConfig(epochs="many")
