from bench.run import main

# A guard, not a plain call: the helper processes are spawned, and spawning imports this module again.
if __name__ == "__main__":
    raise SystemExit(main())
