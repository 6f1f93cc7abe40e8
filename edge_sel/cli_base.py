"""What every edge-sel command shares: the one place that turns an expected failure into one line.

Commands and groups are made with the classes below (`cls=Command` / `cls=Group`, or through a
group's `.command()` / `.group()`), so a subcommand of a nested group (bench, profiles, fleet) is
handled exactly like a top-level one:

- InputError (bad input)                         -> `edge-sel: error: ...`, exit 2
- WriteError, TrainingDiverged, MeasuringFailed, RunKilled -> `edge-sel: error: ...`, exit 1 (the run failed)
- KeyboardInterrupt                              -> `edge-sel: interrupted`, exit 130
- a usage error (an unknown option, a bad value) -> one line, exit 2, without click's usage block
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import click

from edge_sel.errors import InputError, MeasuringFailed, RunKilled, TrainingDiverged, WriteError


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # A user reads what went wrong, not the source line that noticed it.
    return f"edge-sel: warning: {message}\n"


def one_line_warnings() -> None:
    """While the command runs, warnings (a state file fallen back to, a thermal pause capped, a
    sensor lost) print as `edge-sel: warning: ...` on one line, without Python's file, line number
    and source line."""
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    click.get_current_context().call_on_close(lambda: setattr(warnings, "formatwarning", previous))


# `edge-sel bench` alone prints its help: click signals that as a usage error, left as it is.
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class OneLineUsageError(click.ClickException):
    exit_code = 2


def _typed(param: click.Parameter, given: list[str]) -> bool:
    """Whether the command line `given` names `param` (--opt VALUE, --opt=VALUE, -oVALUE)."""
    flags = [*param.opts, *param.secondary_opts]
    return any(arg == flag or arg.startswith(flag + "=") or (len(flag) == 2 and arg.startswith(flag))
               for arg in given for flag in flags)


def _from_environment(e: click.UsageError, given: list[str] | None = None) -> str | None:
    """The variable a bad value came from, when it came from the environment: the user typed no
    option, so an error naming only the option would send them looking in the wrong place."""
    param, ctx = getattr(e, "param", None), e.ctx
    if param is None or ctx is None or not param.name:
        return None
    source = ctx.get_parameter_source(param.name)
    if source is None and given is not None:
        # click 8.4 records where a value came from only once it has converted: a value that
        # failed has no source yet, so the command line decides.
        if _typed(param, given) or param.resolve_envvar_value(ctx) is None:
            return None
    elif source != click.core.ParameterSource.ENVIRONMENT:
        return None
    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
    return next((name for name in names if name in os.environ), names[0] if names else None)


def _suggest(e: click.NoSuchOption) -> str:
    """click's message with our suggestion (click offers the closest spelling only: --gate for
    --lr-rate)."""
    from edge_sel.option_names import closest
    command = e.ctx.command if e.ctx is not None else None
    flags = [flag for p in (command.params if command else []) for flag in (*p.opts, *p.secondary_opts)
             if flag.startswith("--")]
    meant = closest(e.option_name, flags)
    return e.message + (f" Did you mean {', '.join(meant)}?" if meant else "")


def _one_line(e: click.UsageError, given: list[str] | None = None) -> click.ClickException:
    if isinstance(e, NO_ARGS_IS_HELP):
        return e
    if isinstance(e, click.NoSuchOption) and e.option_name.startswith("--"):
        return OneLineUsageError(_suggest(e))
    variable = _from_environment(e, given)
    if variable is not None:
        e.param_hint = f"{variable}={os.environ.get(variable, '')!r} (the environment's {e.param.opts[0]})"
    elif isinstance(getattr(e, "param", None), click.Option) and e.param_hint is None:
        # click names an option's variable beside it ("(env var: 'EDGE_SEL_EPOCHS')") wherever the
        # value came from; a value typed on the command line is named as the option alone.
        e.param_hint = click.Parameter.get_error_hint(e.param, e.ctx)
    return OneLineUsageError(e.format_message())


def _invoke_handled(invoke, ctx: click.Context):
    try:
        return invoke(ctx)
    except click.UsageError as e:       # e.g. an unknown subcommand, or a plain click subcommand's option
        raise _one_line(e) from None
    except InputError as e:
        click.echo(f"edge-sel: error: {e}", err=True)
        sys.exit(2)
    except (WriteError, TrainingDiverged, MeasuringFailed, RunKilled) as e:
        click.echo(f"edge-sel: error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("edge-sel: interrupted", err=True)
        sys.exit(130)


def refuse_non_finite(ctx: click.Context) -> None:
    """A number given (typed, from the environment or a profile) that is not finite is refused, naming
    its option: click's FLOAT takes "nan" and "inf", and NaN passes every range check (`lo <= x` is
    false both ways), so `--target-activation nan` reached the loop. Defaults are the code's own."""
    for param in ctx.command.params:
        if param.name is None or ctx.get_parameter_source(param.name) in (None, click.core.ParameterSource.DEFAULT):
            continue
        value = ctx.params.get(param.name)
        values = [value]
        while any(isinstance(v, (tuple, list)) for v in values):        # multiple values, tuples of them
            values = [w for v in values for w in (v if isinstance(v, (tuple, list)) else [v])]
        bad = next((v for v in values if isinstance(v, float) and not math.isfinite(v)), None)
        if bad is not None:
            raise click.BadParameter(f"{bad} is not a finite number", ctx=ctx, param=param)


def _make_context_one_line(make_context, info_name, args, parent, extra):
    given = list(args)      # click's parser consumes `args`
    try:
        ctx = make_context(info_name, args, parent=parent, **extra)
        refuse_non_finite(ctx)
        return ctx
    except click.UsageError as e:
        raise _one_line(e, given) from None


class Command(click.Command):
    def make_context(self, info_name, args, parent=None, **extra):
        return _make_context_one_line(super().make_context, info_name, args, parent, extra)

    def invoke(self, ctx: click.Context):
        return _invoke_handled(super().invoke, ctx)


class Group(click.Group):
    command_class = Command
    group_class = type          # subgroups made with .group() are of this class too

    def make_context(self, info_name, args, parent=None, **extra):
        return _make_context_one_line(super().make_context, info_name, args, parent, extra)

    def invoke(self, ctx: click.Context):
        return _invoke_handled(super().invoke, ctx)
