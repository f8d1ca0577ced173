"""Running students as Ray Tune trials into the Optuna study: trial body, searcher, study, driver."""
