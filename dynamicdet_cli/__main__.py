from dynamicdet_cli.cli.app import main

main()
