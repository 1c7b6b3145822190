"""Evaluation harness: ``piddpm benchmark`` reproduces the paper's evidence for this code.

See ``docs/evaluation.md``. The pieces::

    cfg = load_config(None, quick=True)          # BenchmarkConfig (pydantic; YAML on disk)
    synthetic_cases(cfg.synthetic, "test")       # seeded cases with ground truth
    real_cases(cfg.real, data_dir, "test")       # the TEST split of the shared data
    discover_models(model_dir, {"name": path})   # bundled + trained models
    run_benchmark(cfg, "out/")                   # results.csv, report.md, figures/
"""

from piddpm.evaluation.config import (
    AblationConfig,
    BenchmarkConfig,
    RealSuiteConfig,
    SamplerSetting,
    SyntheticSuiteConfig,
    load_config,
)
from piddpm.evaluation.methods import (
    MethodPlan,
    discover_models,
    parse_models_arg,
    plan_methods,
    run_method,
    tune_rl,
)
from piddpm.evaluation.runner import RESULT_COLUMNS, BenchmarkResult, run_benchmark
from piddpm.evaluation.scoring import COLUMNS, score
from piddpm.evaluation.suites import (
    Case,
    manifest_files,
    no_reference_cases,
    real_cases,
    shared_data_dir,
    split_of,
    synthetic_cases,
)

__all__ = [
    "AblationConfig",
    "BenchmarkConfig",
    "BenchmarkResult",
    "COLUMNS",
    "Case",
    "MethodPlan",
    "RESULT_COLUMNS",
    "RealSuiteConfig",
    "SamplerSetting",
    "SyntheticSuiteConfig",
    "discover_models",
    "load_config",
    "manifest_files",
    "no_reference_cases",
    "parse_models_arg",
    "plan_methods",
    "real_cases",
    "run_benchmark",
    "run_method",
    "score",
    "shared_data_dir",
    "split_of",
    "synthetic_cases",
    "tune_rl",
]
