"""Reading a finished study: the HTML report (:mod:`.report`), optuna-dashboard (:mod:`.launcher`) and the export of
a chosen student (:mod:`.export`). Readers never import torch at module level."""
