"""The training engine shared by pretrain-modality, align and finetune (ARCHITECTURE §7).

Modules: `schedule` (curriculum phases, ch07 §7.5), `buckets` (token buckets, ch07 §7.6),
`combiners` (fixed / uncertainty / GradNorm / PCGrad, ch07 §7.8, ch05 §5.10), and the loop,
checkpoints, freezing, EMA and scale-out helpers. Import the module you need; this package file
stays empty so that importing one piece never pulls in the others.
"""
