"""The configurations of the reproduction experiments at each scale: the report's (``REPORT``), a
minutes-long one for tests (``SMOKE``), the medium scale (``MEDIUM``, with its cost model
``MEDIUM_COST``) and the TLXML paper's settings (``PAPER``)."""

from __future__ import annotations

from typing import Any

_MLP = {"arch": "mlp", "shots": 5, "queries": 5, "meta_batch": 16, "lr": 0.005}
_NOISE = {**_MLP, "datasets": [["fashion-mnist", 3], ["omniglot", 5]], "algos": ["maml", "protonet"], "train_tasks": [128, 512],
          "seeds": [0, 1, 2], "test_tasks": 128, "steps": 400, "method": "gn", "n_orth": 512}  # fmt: skip

# ---- the report's scale (REPORT) and a minutes-long version of each experiment for tests (SMOKE) ----
REPORT: dict[str, dict[str, Any]] = {
    "e1-distinction": {**_MLP, "dataset": "omniglot", "ways": 5, "algo": "maml", "seed": 0, "train_tasks": 128, "test_tasks": 16, "steps": 1000,
                       "meta_batch": 32, "methods": ["exact", "gn"], "truncations": ["all", "positive", 512, 256, 128, 64, 32, 16, 8],
                       "degrade_tasks": 32, "alphas": [0.0, 0.25, 0.5, 0.75, 1.0], "alpha_ratio": 0.5, "ratios": [0.0, 0.25, 0.5, 0.75, 1.0], "ratio_alpha": 0.75},
    "e2-noise": _NOISE,
    "e3-superclass": _NOISE,
    "e4-one-step": {**_NOISE, "dataset": "fashion-mnist", "ways": 3, "algos": ["maml", "protonet"], "train_tasks": 512, "k": 128, "seeds": [0, 1, 2, 3, 4],
                    "xis": [-8.0, -4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 8.0], "leave_out": True},
    "e5-removal": {**_MLP, "dataset": "fashion-mnist", "ways": 3, "algo": "maml", "seed": 0, "fidelity_tasks": 64, "k": 8, "draws": 3,
                   "retrain_seeds": [0, 1, 2], "damping": 0.01, "detect_tasks": 256, "test_tasks": 128, "steps": 600, "random_draws": 5,
                   "method": "gn", "n_orth": 512},
    "e6-landscapes": {**_MLP, "dataset": "fashion-mnist", "ways": 3, "algos": ["maml", "protonet"], "seed": 0, "train_tasks": 512, "test_tasks": 128,
                      "steps": 300, "lr": 0.0005, "checkpoint_every": 15, "diag_tasks": 32},
    "e7-exact-vs-gn": {"algo": "maml", "arch": "mlp-synthetic", "shots": 5, "queries": 5, "train_tasks": 128, "test_tasks": 64, "steps": 1000,
                       "meta_batch": 32, "lr": 0.01, "n_orth": 32, "seeds": [0, 1, 2]},
    "e8-lds": {"folder": "docs/results/lds"},
}  # fmt: skip
SMOKE: dict[str, dict[str, Any]] = {
    "e1-distinction": {**_MLP, "dataset": "fashion-mnist", "ways": 3, "algo": "maml", "seed": 0, "train_tasks": 16, "test_tasks": 4, "steps": 20,
                       "methods": ["exact", "gn"], "truncations": ["all", "positive", 8], "degrade_tasks": 4, "alphas": [0.0, 1.0], "alpha_ratio": 0.5,
                       "ratios": [0.0, 1.0], "ratio_alpha": 0.75, "n_orth": 64},
    "e2-noise": {**_NOISE, "datasets": [["fashion-mnist", 3]], "algos": ["protonet"], "train_tasks": [16], "seeds": [0, 1], "test_tasks": 8, "steps": 20, "n_orth": 64},
    "e3-superclass": {**_NOISE, "datasets": [["fashion-mnist", 3]], "algos": ["protonet"], "train_tasks": [16], "seeds": [0, 1], "test_tasks": 8, "steps": 20, "n_orth": 64},
    "e4-one-step": {**_NOISE, "dataset": "fashion-mnist", "ways": 3, "algos": ["protonet"], "train_tasks": 16, "k": 4, "seeds": [0, 1],
                    "test_tasks": 8, "steps": 20, "xis": [-1.0, 1.0], "leave_out": True, "n_orth": 64},
    "e5-removal": {**_MLP, "dataset": "fashion-mnist", "ways": 3, "algo": "maml", "seed": 0, "fidelity_tasks": 16, "k": 2, "draws": 2,
                   "retrain_seeds": [0, 1], "damping": 0.01, "detect_tasks": 16, "test_tasks": 8, "steps": 20, "random_draws": 2,
                   "method": "gn", "n_orth": 64},
    "e6-landscapes": {**_MLP, "dataset": "fashion-mnist", "ways": 3, "algos": ["maml"], "seed": 0, "train_tasks": 16, "test_tasks": 8,
                      "steps": 20, "checkpoint_every": 5, "diag_tasks": 4},
    "e7-exact-vs-gn": {"algo": "maml", "arch": "mlp-synthetic", "shots": 5, "queries": 5, "train_tasks": 32, "test_tasks": 8, "steps": 100,
                       "meta_batch": 16, "lr": 0.01, "n_orth": 32, "seeds": [0]},
    "e8-lds": {"folder": "docs/results/lds"},  # smoke = report: it only reads committed results
}  # fmt: skip

# ---- the medium scale (issue 14, item 3): conv nets, M = 1,024, one seed, about an hour ------------
MEDIUM_COST = """Cost model of the medium scale (measured 2026-11-28 on this 2-core Xeon with OMP_NUM_THREADS=1
while two other benchmarks ran, so on an idle machine expect less; 2 threads ≈ 1/1.7 of these
times), fashion-mnist 3-way 5-shot 5-query, meta-batch 16, 16 filters:

                         params  train / step  GN fit / task  test score / test  diagnostics / task / snapshot
    conv3 MAML           5,331   0.65–1.3 s    2.0 s          0.14 s             1.1 s (T = 5, Lanczos 20)
    conv4 ProtoNet       7,248   0.39–0.43 s   0.69 s         0.05 s             1.2 s
    (GN: N_orth = 512, float64; 45 columns per task; train / step: 240–500-step runs, the upper
    MAML figure from a 6-step run with its start-up)

32 filters would cost ≈ 3–4× (the conv FLOPs of blocks 2+ grow with F²): the GN fit of one M = 1,024
MAML run alone would take about 2 hours, so 16 filters is what the hour allows. Likewise M = 2,048
would double the fits (MAML: 2 × 2,048 s): M = 1,024 for every experiment.

Predicted (1-thread seconds, MAML at 1.0 s/step): e2 = train 300 steps (300 + 130) + GN fits (2,050 +
710) + 128 test scores (25) ≈ 3,200; e3 reuses e2's runs and fits ≈ 30; e4 reuses them too, plus the
two leave-out retrainings (430) and the edits' evaluations (≈ 100) ≈ 560; e6 = two 480-step runs
(480 + 200) + 21 snapshots × 16 tasks × diagnostics (≈ 770) + evaluations on 128 test and 64 train
tasks per snapshot (≈ 200) ≈ 1,650. Total ≈ 5,450 s on one thread ≈ 3,200 s ≈ 55 min on two.
"""

_CONV = {"arch_by_algo": {"maml": "conv3", "protonet": "conv4"}, "filters": 16, "shots": 5, "queries": 5, "meta_batch": 16,
         "lr": 0.001}  # fmt: skip
_MEDIUM_NOISE = {**_CONV, "datasets": [["fashion-mnist", 3]], "algos": ["maml", "protonet"], "train_tasks": [1024], "seeds": [0],
                 "test_tasks": 128, "steps": 300, "method": "gn", "n_orth": 512}  # fmt: skip
MEDIUM: dict[str, dict[str, Any]] = {
    "e2-noise": _MEDIUM_NOISE,
    "e3-superclass": _MEDIUM_NOISE,  # the same runs and fits as e2
    # the e2 runs (same task and training configurations) and fits; k = M/4 as the paper's 2,048 of 8,192
    "e4-one-step": {**_MEDIUM_NOISE, "dataset": "fashion-mnist", "ways": 3, "train_tasks": 1024, "k": 256,
                    "xis": [-8.0, -4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 8.0], "leave_out": True},
    # from the initial weights (chance) on; T = 5 inner steps for the trajectories
    "e6-landscapes": {**_CONV, "dataset": "fashion-mnist", "ways": 3, "algos": ["maml", "protonet"], "seed": 0, "train_tasks": 1024,
                      "test_tasks": 128, "steps": 480, "lr": 0.003, "checkpoint_every": 24, "diag_tasks": 16, "diag_steps": 5,
                      "power_iters": 1, "initial_snapshot": True, "train_eval_tasks": 64},
}  # fmt: skip

# ---- the paper scale (issue 14, item 3): the TLXML paper's settings; days on this CPU ----------------
# Nobody runs this on the 2-core CPU: `reproduce --scale paper --estimate` prints what it would cost
# (estimate.py). The settings, with the paper's words (TLXML, seed 000):
#   5.1: "Unless otherwise stated, experiments use a 5-way 5-shot configuration. [...] We train the
#        meta-parameters with Adam, employing a meta-batch size of 32."  -> ways 5, shots 5, meta_batch 32
#   5.1.2: "using 8192 training tasks and replacing the image tensors of 1024 tasks with uniform noise
#        tensors [...] a network with 3-conv layers using MAML (~20k parameters) and a 4-conv-layer
#        feature extractor using Protonet (~28k parameters) [...] on 128 test loss values"
#   B.3: "3-conv×32-filter + 1-fully-connected layers networks (21,029 parameters for MiniImagenet,
#        19,178 parameters for Omniglot) using MAML and 4-conv×32-filter feature extractors (28,896
#        parameters for MiniImagenet, 28,320 parameters for Omniglot) using Protonet [...] In MAML
#        training, the networks are trained with 80,000 meta-batches and 40,000 meta-batches for
#        MiniImagenet and Omniglot, respectively. In Protonet training, [...] 20,000 meta-batches and
#        10,000 meta-batches [...] We conduct 5 runs of training with seeds 0, 1, 2, 3, and 42. [...]
#        N_orth = 8192, N_max = 2×8192"
#   5.1.3 / B.4: "Using 8192 training tasks in the FC60 dataset [...] we train 3-conv×16-filter +
#        1-fully-connected layers networks (6469 parameters) with 40,000 meta-batches using MAML and
#        4-conv×32-filter feature extractors (28,896 parameters) with 40,000 meta-batches using Protonet"
#        (Table 2: one training run, 1,024 test tasks)
#   5.2 / B.5: "We train a 3-conv×16-filter network (6469 parameters), using 8192 training tasks from
#        the FC60 dataset and employing MAML with 40,000 meta-batches. We conduct 5 runs of training
#        with seeds 0, 1, 2, 3, and 42. Each training task is scored using the influence function for
#        the average test loss across 1024 test tasks." (Table 3: 2,048 blocked, ξ = −8 … −1, leave-out)
# The paper is silent on the query-set size, the meta (Adam) learning rate and MAML's inner learning
# rate (A.1: one inner gradient step "with a fixed learning rate α"); we choose 5 queries per class
# (learn2learn's examples, on which the paper builds, split 2·shots samples per class in halves), Adam
# lr 1e-3 (TrainConfig's default, learn2learn's ProtoNet example) and inner lr 0.4 (learn2learn's
# maml_omniglot fast_lr; TrainConfig's default), one inner step, second order.
#
# Our networks (models.build_model; parameter counts in PAPER_PARAMETERS, checked by the tests):
#   Omniglot 1×28×28:       conv3 MAML 32 filters = 20,453 (paper 19,178), conv4 ProtoNet 32 = 28,320 (= paper)
#   mini-ImageNet 3×84×84:  conv3 MAML 22 filters = 20,509 (paper 21,029), conv4 ProtoNet 32 = 28,896 (= paper)
#     (the paper's 21,029 = conv3×32 with a 3×3 final map, i.e. a ≤ 31-pixel input; on 84×84 images
#     conv3×32 has a 10×10 map and 35,589 parameters, so 22 filters match the paper's count instead)
#   Tiny-ImageNet 3×32×32:  conv3 MAML 16 filters = 6,469 (= paper's FC60 MAML), conv4 ProtoNet 32 = 28,896 (= paper)
PAPER_PARAMETERS: dict[tuple[str, str], int] = {
    ("maml", "omniglot"): 20_453, ("protonet", "omniglot"): 28_320,
    ("maml", "mini-imagenet"): 20_509, ("protonet", "mini-imagenet"): 28_896,
    ("maml", "tiny-imagenet"): 6_469, ("protonet", "tiny-imagenet"): 28_896,
}  # fmt: skip
# seed 003 (A.1): the 4-conv network of Vinyals et al. / Finn et al., 32 filters on MiniImagenet, a 5-way head
LANDSCAPE_PAPER_PARAMETERS = {("maml", "mini-imagenet"): 32_901}
_PAPER = {"scale": "paper", "arch_by_algo": {"maml": "conv3", "protonet": "conv4"}, "filters": 32, "shots": 5, "queries": 5,
          "meta_batch": 32, "lr": 0.001, "inner_lr": 0.4, "method": "gn", "n_orth": 8192, "seeds": [0, 1, 2, 3, 42]}  # fmt: skip
_PAPER_SUPERCLASS = {  # 5.1.3 / B.4 on Tiny-ImageNet; its MAML seed-0 run is also e4's (same task and training configuration)
    **_PAPER, "datasets": [["tiny-imagenet", 5]], "algos": ["maml", "protonet"], "train_tasks": [8192], "seeds": [0], "noise": False,
    "test_tasks": 2048, "scored_tests": 1024, "steps": 40000, "filters_by": {"maml": 16, "protonet": 32},
    "paper_networks": "conv3×16 MAML (6,469 parameters) and conv4×32 ProtoNet (28,896) on FC60 (B.4)",
    "paper_reductions": ["Tiny-ImageNet-200 at 32×32 with WordNet superclasses (classes alternate train/test within each superclass) instead "
                         "of FC60 (CIFAR-100's 12 FC100-train superclasses split into 36 train / 24 test subclasses): the closest analogue "
                         "available here, CIFAR-100 could not be obtained",
                         "8,192 training tasks without noise tasks, 40,000 meta-batches of 32 for both learners, one training seed, 1,024 "
                         "scored test tasks (of 2,048 drawn, shared with the one-step section's runs), as the paper (Table 2)",
                         "Adam lr 0.001 and MAML inner lr 0.4, 5 queries per class (the paper does not state them); the N_orth = 8,192 "
                         "columns all kept, the paper picks the truncation (64 … 8,192) by self-rank"]}  # fmt: skip
# seed 003's landscape setting (A.1, A.2, §5.1-5.2): "MiniImagenet, 5-way 1-shot, Second-Order" (Fig. 5b),
# "five steps of full batch gradient descent [...] learning rate α of [...] 0.01 for MiniImagenet [...]
# meta-learning rate β of 0.001 [...] batches of 4 [...] tasks for the 1-shot [...] Each meta-training
# epoch comprises 500 meta-training iterations"; sharpness "using a fixed set of 60 randomly sampled
# meta-test tasks", trajectories over "500 tasks after each metatraining epoch"; 100 epochs (A.2).
_PAPER_LANDSCAPES = {
    "scale": "paper", "arch_by_algo": {"maml": "conv4"}, "filters": 32, "dataset": "mini-imagenet", "ways": 5, "shots": 1, "queries": 15,
    "algos": ["maml"], "seed": 0, "train_tasks": 32768, "test_tasks": 500, "steps": 50000, "meta_batch": 4, "lr": 0.001, "inner_lr": 0.01,
    "inner_steps": 5, "checkpoint_every": 500, "diag_tasks": 60, "diag_steps": 5, "power_iters": 1, "initial_snapshot": True,
    "train_eval_tasks": 500,
    "paper_networks": "4-conv×32 MAML with a 5-way head on MiniImagenet (32,901 parameters; seed 003 A.1)",
    "paper_reductions": ["a fixed taskset of 32,768 training tasks (each drawn about 6 times in 50,000 meta-batches of 4) instead of tasks "
                         "sampled afresh from Ravi's 64 training classes; its 16 validation and 20 test classes are all meta-test classes here",
                         "MAML second order with T = 5 inner steps of α = 0.01, Adam β = 0.001, 100 epochs of 500 meta-batches of 4, 5-way "
                         "1-shot 15-query, a snapshot per epoch plus the initial weights, as seed 003 (A.1-A.2)",
                         "trajectories of T = 5 steps of α = 0.01 from each snapshot, as the network trains",
                         "every diagnostic on the same 60 test tasks (the paper: 60 for sharpness, 500 freshly drawn per epoch for "
                         "trajectories); test and train accuracy on 500 tasks each"]}  # fmt: skip

PAPER: dict[str, dict[str, Any]] = {
    "e2-noise": {**_PAPER, "datasets": [["omniglot", 5], ["mini-imagenet", 5]], "algos": ["maml", "protonet"], "train_tasks": [8192],
                 "test_tasks": 128, "filters_by": {"maml": {"omniglot": 32, "mini-imagenet": 22}, "protonet": 32},
                 "steps_by": {"maml": {"omniglot": 40000, "mini-imagenet": 80000}, "protonet": {"omniglot": 10000, "mini-imagenet": 20000}},
                 "paper_networks": "conv3×32 MAML (19,178 parameters on Omniglot, 21,029 on MiniImageNet), conv4×32 ProtoNet (28,320 / 28,896) (B.3)",
                 "paper_reductions": ["8,192 training tasks (1,024 noise), 128 test tasks, 5 training seeds (0, 1, 2, 3, 42), MAML 40,000 / 80,000 and "
                                      "ProtoNet 10,000 / 20,000 meta-batches of 32 on Omniglot / mini-ImageNet, as the paper (Table 1, B.3); the "
                                      "sweep over 128 … 4,096 training tasks (Tables 8–11) is left out",
                                      "mini-ImageNet MAML with 22 filters: on 84×84 images conv3×32 would have 35,589 parameters, 22 filters give "
                                      "the paper's ~21k",
                                      "Adam lr 0.001 and MAML inner lr 0.4, 5 queries per class (the paper does not state them); the N_orth = 8,192 "
                                      "columns all kept, the paper picks the truncation (64 … 8,192) by self-rank"]},
    "e3-superclass": _PAPER_SUPERCLASS,
    "e4-one-step": {**_PAPER, "dataset": "tiny-imagenet", "ways": 5, "algos": ["maml"], "train_tasks": 8192, "noise": False, "k": 2048,
                    "test_tasks": 2048, "steps": 40000, "filters_by": {"maml": 16}, "xis": [-8.0, -4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 8.0],
                    "leave_out": True, "paper_networks": "conv3×16 MAML (6,469 parameters) on FC60 (B.5)",
                    "paper_reductions": ["Tiny-ImageNet-200 at 32×32 with WordNet superclasses instead of FC60 (CIFAR-100 could not be obtained)",
                                         "8,192 training tasks without noise tasks, 40,000 meta-batches of 32, seeds 0, 1, 2, 3, 42, k = 2,048 "
                                         "blocked / enhanced, scored for the mean loss of 1,024 test tasks, as the paper (Tables 3–4); the "
                                         "'held-out' columns (another 1,024 test tasks) are ours, the FC100 test taskset has no analogue here",
                                         "Adam lr 0.001 and MAML inner lr 0.4, 5 queries per class (the paper does not state them)"]},
    "e6-landscapes": _PAPER_LANDSCAPES,
}  # fmt: skip
