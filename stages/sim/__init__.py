"""Demo data from Meta-World scripted experts (ARCHITECTURE §9).

    envs          SimEnv / make_env: a task with its expert, actuator model and fast renderer
    constraints   constraint sets of the instructions and the Euclidean (QP) projection onto them
    rollout       one expert episode on true time (command slew limit, projection, lag)
    lag           the action -> motion cross-correlation lag (the truth's definition)
    rig           sensor streams: rates, session clocks (offset + drift), jitter, sensor noise
    faults        row and text fault injection with their truth records
    copies        duplicated / near-duplicate episodes and eval leaks
    instructions  English and Chinese templates, constraint clauses, text faults
    episode       record one planned episode (what a worker process runs)
    record        `vla sim record`: plan, parallel recording, truth files, summary
"""
