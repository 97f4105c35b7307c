"""`fastroar replicate`: the paper's findings (Shah, Jain & Netrapalli 2021) reproduced on data that runs here,
each beside the paper's (or the reference code's) number, in one table of claims.

Written to <workdir>/replicate/ as PNGs plus summary.json and summary.md:

1. Fig. 5 / Theorem 1 (feature leakage) on the synthetic data of eq. (2) (configs/leakage.yaml:
   d = 10 blocks, d~ = 1, eta = 0): a linear model, a standard one-hidden-layer MLP and a PGD-trained
   (l-inf) MLP, trained by fastroar's train stage into <workdir>/replicate/leakage/. For each model and for
   both the theory's margin gradient (gradient:margin) and |d logit_yhat/dx| (gradient): the share of
   |gradient| mass on the signal block, the other task-relevant blocks and the noise blocks, the top-1 hit
   rate and AQ; DiffROAR of both MLPs (precompute + retrain stages) beside its analytic value
   (fastroar.metrics.aq.leakage_diffroar_expectation: ceiling 1 - chance = 0.5, perfect leakage 0.1).
2. The reference notebook's synthetic score (configs/leakage-all.yaml): AQ = P(top-1 = j*) - P(bottom-1 = j*)
   of the loss gradient on x = y*e_j with j over all d coordinates, three seeds per model (mean +- std).
3. BlockMNIST-style (the workdir's dataset when it records signal blocks, else skipped) and its other
   variant (blockdigits <-> blockdigits-top, blockmnist <-> blockmnist-top, trained into
   <workdir>/replicate/<variant>/): |input gradient| grids, localization and AQ (top-m vs bottom-m, m = the
   block size) per model. Paper (Sec. 5): standard gradients localize on the -Top variant, not on the
   random one; robust ones on both.
4. DiffROAR standard vs robust from the workdir's retraining results (without --quick, replicate runs the
   precompute and retrain stages for `gradient` when they are missing), with the ROAD estimate beside it.

Every base model's clean accuracy, its accuracy under attack and the test split's chance rate are printed
together; a model below its config's train.min_test_acc, or at chance under attack, gets a WARNING line.
Nothing is tuned to agree with the paper: the settings are the shipped configs' (or --quick's tiny ones).

Modules by job: leakage, aq, block, diffroar (the experiments), measures (what they measure on a model),
results (their dataclasses and summary.json), claims (the table of claims), render (summary.md), plots,
driver (the stage).
"""
from fastroar.stages.replicate.claims import claims
from fastroar.stages.replicate.driver import replicate
from fastroar.stages.replicate.measures import mass_shares, signed_gradient, signed_margin_gradient
from fastroar.stages.replicate.render import summary_markdown

__all__ = ["replicate", "signed_gradient", "signed_margin_gradient", "mass_shares", "summary_markdown", "claims"]
