from vlacli.app import main

main()
