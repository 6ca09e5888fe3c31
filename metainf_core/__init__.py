"""metainf compute core: few-shot datasets, fixed tasksets, meta-learners, checkpoints and
task-level influence (TLXML). Usable without the Streamlit app; never imports it."""

__version__ = "0.1.0"
