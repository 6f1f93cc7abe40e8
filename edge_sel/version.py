"""The version of edge-sel, in a leaf module: every layer may read it without importing the
package's face (edge_sel/__init__.py, which hands out the Python API)."""

__version__ = "0.1.0"
