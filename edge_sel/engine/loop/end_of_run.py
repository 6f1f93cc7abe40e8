"""The end of a run: the test set once the last epoch is known, the output model's own test when
the kept weights are not the last epoch's, the bank re-estimated for the weights handed back;
each pass charged to the last record like any evaluation."""

from __future__ import annotations

from functools import partial

from edge_sel.core.records import RecordWriter
from edge_sel.engine.evaluation.bn_bank import weights_key
from edge_sel.engine.evaluation.evaluate import accuracy, evaluation_flops
from edge_sel.engine.loop.bank_passes import (add_evaluation_time, bank_selecting, charge_bank, holding, metered,
                                              predict_selected, refresh_bank)


def evaluate_at_the_end(trainer, writer: RecordWriter | None) -> None:
    """The test set runs once the last epoch is known: a run stopped by its strategy after an
    epoch that skipped it gets it now (its record is rewritten), and kept weights other than the
    last are tested too, so the summary states the output model's test accuracy."""
    if not trainer.records:
        return
    last = trainer.records[-1]
    changed = False
    # Without a test set (a fleet client's) there is nothing to test: a pass over no images rewrote
    # the record's evaluation memory with its own nulls.
    has_test = trainer.test_ds is not None and len(trainer.test_ds) > 0
    if last.get("test_acc") is None and last.get("phase") != "baseline" and (has_test or last.get("val_acc") is None):
        extra = trainer.evaluate(validate=last.get("val_acc") is None, test=True)
        for key in ("flops_eval", "eval_wall_s", "eval_energy_j", "val_samples_evaluated",
                    *(("anchor_samples_evaluated", "flops_anchor") if "flops_anchor" in extra else ()),
                    *(("flops_bn_bank", "bn_bank_samples") if "flops_bn_bank" in extra else ())):
            extra[key] = (extra.get(key) or 0) + (last.get(key) or 0)
        for key in ("memory_eval_counted_mb", "memory_eval_measured_mb", "memory_eval_beside_mb"):
            seen = [v for v in (extra.get(key), last.get(key)) if v is not None]     # the larger pass's
            extra[key] = max(seen) if seen else None
        if last.get("val_acc") is not None:
            extra.pop("val_acc")
            extra.pop("anchor_acc", None)          # measured with the validation, kept
            extra.pop("anchor_forgetting", None)
            extra["evaluated"] = "val+test"
        last.update(extra)
        trainer.keep_choice(last["epoch"], last)
        trainer.log.evaluation(f"epoch {last['epoch']} (the last)", last.get("test_acc"), extra.get("eval_wall_s"),
                               extra.get("eval_energy_j"))
        changed = True
    kept = trainer.choice.weights_to_load()
    if kept is not None and trainer.choice.test_acc is None:
        kept_model_test(trainer, kept, last)
        changed = True
    changed = bank_for_output(trainer, kept, last) or changed
    if changed and writer is not None:
        writer.reset(([trainer.baseline] if trainer.baseline else []) + trainer.records)


def bank_for_output(trainer, kept: dict | None, last: dict) -> bool:
    """The bank re-estimated for the output model's weights when its last estimate was for
    others (charged to the last record); True when it ran."""
    if trainer.bank is None:
        return False
    with holding(trainer.model, kept):
        if trainer.bank.refreshed_for == weights_key(trainer.model):
            return False
        with metered(trainer) as took:
            refreshed = refresh_bank(trainer)
    charge_bank(trainer, last, refreshed)
    add_evaluation_time(last, took["wall"], took["energy"].get("energy_j"))
    return True


def kept_model_test(trainer, kept: dict, last: dict) -> None:
    """The output model's test accuracy when it is not the last epoch's: an evaluation pass
    like any other, charged to the last record (FLOPs, seconds, joules)."""
    # The torch model, not backend.predict: an ORT session still holds the last weights.
    # Under a shift, the server's clean test set too: what the handed-back model forgot.
    clean = trainer.eval_sets.clean_test
    with holding(trainer.model, kept), metered(trainer) as took, bank_selecting(trainer) as refreshed:
        logits = trainer.eval_sets.logits(partial(predict_selected, trainer), trainer.test_ds)
        clean_logits = None if clean is None else trainer.eval_sets.logits(partial(predict_selected, trainer), clean)
    wall, joules = took["wall"], took["energy"].get("energy_j")
    trainer.choice.test_acc = accuracy(logits, trainer.test_ds.labels)
    flops = evaluation_flops(trainer.flops, len(trainer.test_ds), trainer.eval_batch_size)
    if clean is not None:
        trainer.choice.clean_test_acc = accuracy(clean_logits, clean.labels)
        flops += evaluation_flops(trainer.flops, len(clean), trainer.eval_batch_size)
    last["kept_test_flops"], last["kept_test_energy_j"] = flops, joules
    last["flops_eval"] = (last.get("flops_eval") or 0) + flops
    if refreshed is not None:
        charge_bank(trainer, last, refreshed)
    add_evaluation_time(last, wall, joules)
    trainer.log.evaluation(f"the output model (epoch {trainer.choice.epoch})", trainer.choice.test_acc, wall, joules)
