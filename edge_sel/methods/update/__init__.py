"""Which parameters change: every module here is an Updater (or its helper) that decides, per step,
which weights or weight entries are trained; none of them chooses samples.

- sparse.py: SEL's guilt mask (`mask`: entries under the guilt threshold keep their values) and
  layer freezing (`layers`: the least guilty blocks get no weight gradient); guilt.py: the guilt
  threshold and its calibration step;
- surgical.py: Auto-RGN (`rgn`), layer freezing whose blocks and rates follow relative gradient norms;
- lottery.py: lottery-ticket retraining with a fixed magnitude mask (`lottery`), and the prune-and-
  rewind step that writes the mask;
- bn_affine.py: training only the BatchNorm affine parameters (`bn-affine`).

Each module's register() is called from edge_sel/methods/__init__.py, the one place methods are
registered. SEL's curriculum (which samples) lives in methods/select; methods/sel.py composes both.
"""
