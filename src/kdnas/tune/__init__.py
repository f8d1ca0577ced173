"""The search: the driver (:mod:`.driver`: pre-flight, prepare, open the study, Ray Tune, finish), what every trial
shares (:mod:`.inputs`, :mod:`.one_layer`, :mod:`.elastic_phase`, :mod:`.fingerprint`), the trial body
(:mod:`.trial`), its Ray Tune trainable, searcher and scheduler, and re-timing or retraining after a search."""
