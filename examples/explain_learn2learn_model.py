"""Explain a MAML trained with learn2learn: train it (your code), save it, import it, open the dashboard.

    python examples/explain_learn2learn_model.py runs/l2l-maml
    python -m streamlit run app.py        # Home → Run folder → runs/l2l-maml

``main`` (20 lines) is all metainf needs from you; the training loop is learn2learn's MAML example.
"""

import random
import sys
from pathlib import Path

import learn2learn as l2l
import torch
import torch.nn.functional as F

from metainf_core.data import load_dataset
from metainf_core.importing import alternate_support, import_run, tasks_from_learn2learn

WAYS, SHOTS, STEPS = 3, 2, int(sys.argv[2]) if len(sys.argv) > 2 else 300
MODEL = f"l2l.vision.models.OmniglotCNN(output_size={WAYS}, hidden_size=16, layers=4)"


def train_maml(taskset):  # your training code: learn2learn's MAML example, unchanged in substance
    maml = l2l.algorithms.MAML(l2l.vision.models.OmniglotCNN(output_size=WAYS, hidden_size=16, layers=4), lr=0.4)
    opt = torch.optim.Adam(maml.parameters(), 3e-3)
    for _ in range(STEPS):
        opt.zero_grad()
        for _ in range(4):
            x, y = taskset.sample()
            support = alternate_support(y)  # even positions adapt, odd ones are evaluated
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(x[support]), y[support]))
            (F.cross_entropy(learner(x[~support]), y[~support]) / 4).backward()
        opt.step()
    return maml


def main(out: Path) -> None:
    # 1. Tasks: a fixed, numbered TaskDataset over a dataset metainf knows (indices in its own order).
    fashion = load_dataset("fashion-mnist").as_torch_dataset()  # (image, class) by metainf's sample index
    data = l2l.data.MetaDataset(fashion, indices_to_labels=fashion.indices_to_labels)
    taskset = l2l.data.TaskDataset(data, num_tasks=256, task_transforms=[
        l2l.data.transforms.FusedNWaysKShots(data, n=WAYS, k=2 * SHOTS, filter_labels=list(fashion.dataset.train_classes)),
        l2l.data.transforms.LoadData(data), l2l.data.transforms.RemapLabels(data), l2l.data.transforms.ConsecutiveLabels(data),
    ])  # fmt: skip
    # 2. Train as you always do, and save the weights as you always do.
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(train_maml(taskset).state_dict(), out.with_suffix(".pt"))
    # 3. Import: the weights file, how to rebuild the network, the learner, and the tasks it was trained on.
    run = import_run(
        MODEL, out, weights=out.with_suffix(".pt"), algo="maml", inner_lr=0.4, dataset="fashion-mnist",
        train_tasks=tasks_from_learn2learn(taskset, alternate_support),
    )  # fmt: skip
    print(f"imported into {run}; open it with: python -m streamlit run app.py (Home → Run folder → {run})")


if __name__ == "__main__":
    random.seed(0)
    torch.manual_seed(0)
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/l2l-maml"))
