"""Training drafters by self-distillation: data from the target's own decoding (distill.py,
which runs the exported bundle through the runtime), the drafter training loop (trainer.py)
and its losses (losses.py), Medusa-2's joint fine-tune (medusa2.py), and the fits folded into
a drafter's head at export: VocabTrim's counts (vocab_trim.py) and SlimSpec's low-rank head
(low_rank.py). The torch modules they train are in models/."""
