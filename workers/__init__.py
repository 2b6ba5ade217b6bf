"""Long-running processes of the bridge: dispatchers (queue → pods) and the watcher (pods → result stream).

They depend on ``bridge``; ``bridge`` never depends on them.
"""
