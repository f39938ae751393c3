from vlacli.app import main

if __name__ == "__main__":  # guarded: `--workers` spawns processes that re-import the main module
    main()
