"""Which samples are computed: every module here decides, per epoch or per batch, which training
samples get a forward and backward pass (and with what weight); none of them touches parameters.

- strategies and gates: sundew.py (significance against a PI-held threshold), random_gate.py,
  infobatch.py, dihcl.py; ast_seed.py (the AST seed's in-batch Sundew, a strategy of its own);
  curriculum.py (SEL's staged easy-to-hard pools) with stages.py (its stage table);
  embarrassment.py (class focus: each class's share of the sample budget);
- what they score samples by: hardness.py (per-sample history), significance.py (scores over it);
- what holds a gate's activation: threshold_control.py (PI controllers), energy_budget.py (the
  activation a joule budget affords);
- shared plumbing of the gates: gate_plans.py (plans a gate returns), gating_config.py (their
  options, checked), gating_registry.py (their factories, called from edge_sel/methods/__init__.py).

SEL's guilt mask and layer freezing choose weights and live in methods/update; the `sel` strategy
that composes the curriculum with them is methods/sel.py, beside both packages.
"""
