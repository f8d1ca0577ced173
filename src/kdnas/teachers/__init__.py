"""Teachers: load any Hugging Face sequence classifier (:mod:`.loading`), fit it on the task (:mod:`.fitting`), cache
its logits (:mod:`.logits`) and importance (:mod:`.importance`) once per study, and choose which teachers serve
intermediate KD, augmentation and inheritance (:mod:`.roles`); on a Ray cluster the fitting, logits and importance run
as Ray tasks with their own resources (:mod:`.tasks`)."""
