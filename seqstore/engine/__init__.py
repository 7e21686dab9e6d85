"""The format-agnostic loading engine: which records each worker reads, and in what order.

- :mod:`.order`: pure functions from (record count, block size, seed, epoch, rank, worker)
  to the blocks a worker reads; no I/O, no torch.
- :mod:`.plan`: the epoch spec made from the loader's settings, and the exact order of
  every worker and rank it fixes (:func:`.plan.worker_order`).
- :mod:`.shuffle`: a bounded, seeded shuffle buffer over the records of those blocks.
- :mod:`.stream`: reads the blocks through a backend reader and yields shuffled batches.
"""
