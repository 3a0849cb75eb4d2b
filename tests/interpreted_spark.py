"""Spark settings of every JVM the tests start: the session's, the CLI's and the demo's (through
PYSPARK_SUBMIT_ARGS, set in tests/conftest.py) and each rehearsal task's (its cluster's
spark-defaults.conf, tests/rehearsal/rehearse.py).

The tables here are a few hundred rows, so compiling each new query plan to Java bytecode
(whole-stage code generation, Janino) costs more CPU than running it interpreted. These change
how Spark evaluates a plan, not its result (Spark's own tests run both ways, and a plan whose
generated code fails to compile falls back to this path anyway: spark.sql.codegen.fallback).
The product keeps Spark's defaults, and so does one test of a job as a user runs it
(tests/catalogue/test_ingest.py::test_cli_ingest_prints_one_json_line). Measured with
tests/catalogue/test_ingest.py alone: 234 -> 195 CPU-seconds (docs/testing.md).
"""

SETTINGS = {"spark.sql.codegen.wholeStage": "false",
            "spark.sql.codegen.factoryMode": "NO_CODEGEN"}


def submit_args() -> str:
    """PYSPARK_SUBMIT_ARGS that start a local session with SETTINGS."""
    return " ".join([f"--conf {key}={value}" for key, value in SETTINGS.items()]
                    + ["pyspark-shell"])
