# mmseg's runtime, plus our losses, metric and held-out split. The study's runner (pipeline/train) sets the
# seed, work dir, resume and, inside Ray workers, the DDP wrapper.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['pipeline.losses', 'pipeline.metrics', 'pipeline.splits'],
                      allow_failed_imports=False)
