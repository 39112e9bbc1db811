"""supervisord: rendering configs from mesh.yaml (pure) and controlling it over XML-RPC."""
