import surgeflow


def test_public_names_are_pinned() -> None:
    assert sorted(surgeflow.__all__) == sorted(
        [
            "Branch",
            "ConfigError",
            "Context",
            "Loop",
            "Map",
            "ModelError",
            "NotFound",
            "Parallel",
            "Settings",
            "Step",
            "StepError",
            "SurgeflowError",
            "ValidationError",
            "Workflow",
            "__version__",
            "load_settings",
            "step",
        ]
    )
    for name in surgeflow.__all__:
        assert getattr(surgeflow, name) is not None
