"""`python -m agentmesh_cli` is the `agentmesh` command (supervisord uses this form)."""

from agentmesh_cli.cli import main

main()
