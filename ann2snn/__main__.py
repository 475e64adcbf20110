try:
    from ann2snn.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the command line starts: no traceback (main() handles it from there on)
    raise SystemExit(130) from None

main()
