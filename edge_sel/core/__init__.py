"""The core every layer may use: counted FLOPs and the checkpoint and record files.

config, errors and device_caps sit beside this package (edge_sel/*.py) and belong to the same
lowest layer; nothing here imports any other part of edge_sel.
"""
