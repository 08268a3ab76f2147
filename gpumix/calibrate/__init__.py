"""The calibration stage: fit the speed model on published measurements, check its predictions against them,
and read/write this machine's calibration file.

- `measurements`: the CSV formats of ../shared/calibration, mapped through the catalogs (`map_file`, `predict_row`)
- `engine_notes`: a row's llama.cpp build, era, flags and caution mark from its notes (`engine_of_row`)
- `validate`: `validate_file` → `ValidationReport` (`gpumix validate`)
- `fit`: `python -m gpumix.calibrate.fit measurements.csv multigpu.csv [--holdout]` → gpumix/estimate/data/calibration.json
  (with --holdout also the prediction bands and bench/calibration/holdout_residuals.csv)
- `files`: the one reader/writer of calibration files (`load_calibration`, `load_machine_calibration`,
  `save_machine_calibration`) and the rule that picks one (`resolve_calibration_path`)

The core (`gpumix.estimate`, `gpumix.plan`) never imports this package: it receives a `Calibration`.
"""
