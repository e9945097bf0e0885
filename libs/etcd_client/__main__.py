from libs.etcd_client.cli import main

main()
