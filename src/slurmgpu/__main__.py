from slurmgpu.entry import main

raise SystemExit(main())
