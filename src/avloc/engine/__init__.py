"""Engine: evaluation (``evaluate``) and training loops.

Keep this module free of heavy imports: ``avloc eval`` imports
``avloc.engine.evaluate`` and must not pay for torch when it scores saved
predictions.
"""
