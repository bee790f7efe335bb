"""`python -m pipeline.bench`: the pipeline's Trainer against the notebook's plain PyTorch loop.

In one process, after warm-up, interleaved round by round: (a) `plain`, the seed's loop
(zero_grad, forward, loss, backward, step) with the run's model settings and DataLoader;
(b) `pipeline`, the Trainer with the run's callbacks and logger; (c) `naive`, the notebook as
written (torch.rand batches, NCHW, 32-true); with bench.features, `bare` (no instruments,
no progress bar; the run's loggers) plus bare with one instrument at a time; and, for each of
bench.knobs, the pipeline with that one setting changed. Each round times bench.steps steps per
variant after bench.warmup_steps; a round's figure is its mean step time (so instruments that
fire every N steps are counted), with the device synchronized only at the two ends of the timed
window (the host may run ahead of a GPU, as in training), and the report is the median over
rounds. The order of the variants turns every round, so none always runs first or after the
same neighbour. The first step of the first round is reported apart (torch.compile compiles in
it). Then the data path alone: µs to make an image of the run's batch on its device, against
the numpy path it replaced, and that time's share of a pipeline step (bench.data_only=true:
only this). Writes a table, and bench.output as JSON.

One concern a module:
    __main__.py   the command: validate, measure, write bench.output, exit 3 on divergence
    modes.py      which measurement: soak, loop overhead, outside, data path alone, or the interleaved benchmark
    config.py     the bench.* keys' validation
    variants.py   the Trainer variants (bare, one instrument each, knobs) as configs
    clock.py      the step clock, and the Trainer callback around it
    loops.py      the three loops timed: the Trainer, the plain loop, the notebook's naive loop
    run.py        the interleaved rounds, then start-up and the data path
    stats.py      medians over rounds, ratios and costs
    show.py       the table and lines printed
    data_path.py  make_batch against the numpy path it replaced
    memory.py     peak and resident memory
    soak.py       bench.soak_steps: one long run, resident memory along it
    outside.py    bench.outside_rounds: real runs as processes against plain_script.py, a plain
                  loop as a process; step times from a 44-step run minus a 4-step run
    overhead.py   bench.overhead_steps: the plain loop, bare Lightning and the pipeline around a
                  zero-cost model, µs a step
    startup.py    bench.startup: a real `python -m pipeline.train`, command to training
"""
