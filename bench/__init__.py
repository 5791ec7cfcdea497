"""`editgan bench`: how fast the service and the engine are, printed as JSON, one dated row per run in
`bench/RESULTS.md`.

Sections (each a module, `--only` picks them):
    vector  synchronous vector edits: bare engine forward vs HTTP end to end, throughput at 1, 4 and 16
            clients, micro-batching on vs off                                              (vector.py)
    jobs    queue overhead, inversion / optimisation edit / refinement per step and in total, peak memory
            of the gateway and worker processes, worker cold start                          (jobs.py)
    naive   `optimize_edit` against the official loop written plainly, at equal final loss  (naive.py)
    paper   the same timings for the official 512 px car architecture with random weights   (paper.py)

Rules: speed is measured here, never in tests; every comparison measures both sides in the same run on
the same machine and is reported as a ratio; a figure from a `--quick` run is a smoke test, not a result.
"""
