from ann2snn.cli.main import main

main()
