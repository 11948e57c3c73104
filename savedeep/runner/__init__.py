"""The run: everything between a config and a finished output.

Owns the supervisor (:mod:`.pipeline`: starts the workers of ``savedeep._workers``, routes their messages, ends
the run), the checks and plan before anything starts (:mod:`.preflight`, :mod:`.sizes`,
:mod:`.validate`), the CPU and worker plan (:mod:`.devices`), the transport between processes
(:mod:`.shm` rings, :mod:`.messages`), the output's lock and manifest (:mod:`.lock`, :mod:`.manifest`),
array tasks and Slurm scripts (:mod:`.tasks`, :mod:`.slurm`), the fault injection the tests use
(:mod:`.faults`) and the terminal and run log (:mod:`.ui`).

May import every layer below it: :mod:`savedeep.analysis` (the report after a run or a merge),
:mod:`savedeep.engines`, :mod:`savedeep.data`, :mod:`savedeep.caffe`, the config and the leaf modules;
only :mod:`.pipeline` imports ``savedeep._workers`` (the role loops it starts). Never the CLI.

Named ``runner``, not ``run``: ``savedeep.run`` is the public function.
"""
