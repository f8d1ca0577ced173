"""Distillation objectives: logit KD (:mod:`.losses`), multi-teacher combiners (:mod:`.combiners`), intermediate-layer
KD with fixed or EMD layer maps (:mod:`.intermediate`, :mod:`.emd`), ramps (:mod:`.schedules`) and the student's
whole loss (:mod:`.distillation`)."""
