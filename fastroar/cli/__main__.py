from fastroar.cli import main

main()
