"""HTTP services of the mesh (memory, cognition) and the resilient client that calls them."""
