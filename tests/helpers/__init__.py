"""What the tests share: running commands and meshes, the services, role classes, the
scripted HTTP server. Test files import from here, never from each other."""
