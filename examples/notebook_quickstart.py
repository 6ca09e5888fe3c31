# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # metainf quickstart: which training tasks made this test task easy or hard?
#
# A jupytext percent script: open it as a notebook (`jupytext --to notebook`), or run it as
# `python examples/notebook_quickstart.py` from the repository root. On the bundled ProtoNet demo
# it ranks the training tasks for one test task (TLXML Eq. 9, 12), shows the five most helpful
# with their images, and edits the model with ξ (Eq. 13). The demo ships its influence fit, so
# nothing is fitted here.

# %%
import sys
import tempfile
from pathlib import Path

here = Path(__file__).parent if "__file__" in globals() else Path.cwd()  # a script, or a notebook's folder
sys.path.insert(
    0, str(here.resolve().parent if here.resolve().name == "examples" else here.resolve())
)  # the repository root

from metainf_core import Explainer, ExplainerConfig, open_run

TEST_TASK = 7

run = open_run("protonet-fashion-mnist")
explainer = Explainer(run, ExplainerConfig(method="gn")).fit()  # the shipped fit: loads at once
explainer  # noqa: B018 - a notebook displays a cell's last value

# %% [markdown]
# ## Rank every training task for one test task
# `score` is helpfulness = −I_perf: positive means up-weighting that training task lowers the
# test task's loss. Rank 0 is the most helpful.

# %%
ranking = explainer.rank(TEST_TASK)
table = ranking.to_pandas()
top5 = table.head(5)
print(top5[["train_task", "score", "rank", "classes", "corruption"]].to_string(index=False))

# %% [markdown]
# ## The five most helpful training tasks, with their support images

# %%
import plotly.graph_objects as go
from plotly.subplots import make_subplots

titles = [
    f"#{r.rank + 1}: training task {r.train_task} · {', '.join(r.classes)} · score {r.score:+.3g}"
    + ("" if r.corruption == "none" else f" · {r.corruption}")
    for r in top5.itertuples()
]
fig = make_subplots(rows=5, cols=1, subplot_titles=titles, vertical_spacing=0.06)
for row, task in enumerate(top5.train_task, start=1):
    fig.add_trace(go.Image(z=explainer.thumbnails(int(task))), row=row, col=1)
fig.update_xaxes(visible=False).update_yaxes(visible=False)
fig.update_layout(
    height=5 * 110,
    width=760,
    margin={"l": 10, "r": 10, "t": 40, "b": 10},
    title=f"Most helpful for test task {TEST_TASK}",
)
print(f"figure: {len(fig.data)} thumbnail strips")
fig  # noqa: B018 - a notebook displays a cell's last value

# %% [markdown]
# ## Edit: block the 64 most harmful training tasks with ξ = −1 (≈ removing them)

# %%
edit = explainer.edit(block=ranking.top(-64), xi=-1.0, test_task=TEST_TASK)
task = edit.report["test_task"]
print(
    f"test taskset accuracy {edit.accuracy_before:.4f} -> {edit.accuracy_after:.4f} "
    f"({100 * (edit.accuracy_after - edit.accuracy_before):+.2f} points)"
)
print(f"test task {TEST_TASK} accuracy {task['before']['accuracy']:.4f} -> {task['after']['accuracy']:.4f}")

# %% [markdown]
# The edited meta-parameters are a run folder of their own: every command and page opens it.

# %%
saved = edit.save(Path(tempfile.mkdtemp()) / "edited")
print(f"edited checkpoint: {saved}")
