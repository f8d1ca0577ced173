"""The Optuna study and what it holds: typed trial records (:mod:`.records`), the storage (:mod:`.storage`), students
seen again (:mod:`.repeats`), trials whose driver is gone (:mod:`.orphans`) and the accuracy–latency front
(:mod:`.front`). Imports only :mod:`kdnas.config`: every other part of kdnas may read the study."""
