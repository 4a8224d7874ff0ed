"""Runs a job and SIGKILLs it at a named point (fault tests).

    python -c kill_at.HARNESS POINT MODULE [FLAGS...]

POINT is `module:function:N:before|after[:match]`: the N-th call of that
function (a dotted name for a method) whose arguments match, before or
after it runs. `match` is a substring of the arguments' text, or `#i=v`:
positional argument i is v. MODULE runs as `python -m MODULE FLAGS...`
would. The process prints `SIGKILL at POINT` to stderr first.
"""
import textwrap

HARNESS = textwrap.dedent('''
    import importlib, os, runpy, signal, sys
    point, module_to_run = sys.argv.pop(1), sys.argv.pop(1)
    module, name, count, when, match = (point.split(':') + [''])[:5]
    owner = importlib.import_module(module)
    *owners, attribute = name.split('.')
    for part in owners:
      owner = getattr(owner, part)
    original, calls = getattr(owner, attribute), []
    def matches(args):
      if match.startswith('#'):
        i, value = match[1:].split('=')
        return len(args) > int(i) and str(args[int(i)]) == value
      return match in ' '.join(map(str, args))
    def die():
      print('SIGKILL at', point, file=sys.stderr, flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    def wrapper(*args, **kwargs):
      hit = matches(args)
      calls.extend([0] if hit else [])
      last = hit and len(calls) == int(count)
      if last and when == 'before':
        die()
      result = original(*args, **kwargs)
      if last:
        die()
      return result
    setattr(owner, attribute, wrapper)
    sys.argv[0] = module_to_run
    runpy.run_module(module_to_run, run_name='__main__', alter_sys=True)
''')
