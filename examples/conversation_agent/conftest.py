"""Makes ``conversation_agent`` importable from this example's tests (pytest puts this
file's directory on ``sys.path``). The fixtures come from rkllm-sdk's pytest plugin."""
