"""The gateway: the mesh's front door over HTTP, Server-Sent Events and MCP (docs/gateway.md)."""
