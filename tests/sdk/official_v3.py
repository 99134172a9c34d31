"""Drives slb's API with the official Alibaba Cloud SDK for SLB 2014-05-15
(alibabacloud-slb20140515 on alibabacloud-tea-openapi, signature V3 ACS3-HMAC-SHA256).

usage: official_v3.py ENDPOINT KEY_ID SECRET REGION BACKEND_IP[,BACKEND_IP...]
Creates an instance, a VServerGroup on TCP 8080 of every backend, a TCP listener 80 -> that
group, the backends in the default group, a UDP listener 53 -> 5353, starts both and prints
one JSON line {"LoadBalancerId": ..., "Address": ...}. With DELETE=<id> it deletes that
instance instead.
"""
import json
import os
import sys
import time

from alibabacloud_slb20140515 import models
from alibabacloud_slb20140515.client import Client
from alibabacloud_tea_openapi.models import Config


def main():
    endpoint, key_id, secret, region, backends = sys.argv[1:6]
    client = Client(Config(access_key_id=key_id, access_key_secret=secret,
                           endpoint=endpoint, protocol="http", region_id=region))
    if os.environ.get("DELETE"):
        client.delete_load_balancer(models.DeleteLoadBalancerRequest(
            region_id=region, load_balancer_id=os.environ["DELETE"]))
        print(json.dumps({"deleted": os.environ["DELETE"]}))
        return
    lb = client.create_load_balancer(models.CreateLoadBalancerRequest(
        region_id=region, load_balancer_name="sdk-v3")).body
    ips = backends.split(",")
    group = client.create_vserver_group(models.CreateVServerGroupRequest(
        region_id=region, load_balancer_id=lb.load_balancer_id, vserver_group_name="web",
        backend_servers=json.dumps([{"ServerId": ip, "Port": 8080, "Weight": 100} for ip in ips]))).body
    client.create_load_balancer_tcplistener(models.CreateLoadBalancerTCPListenerRequest(
        region_id=region, load_balancer_id=lb.load_balancer_id, listener_port=80, bandwidth=-1,
        vserver_group_id=group.vserver_group_id, scheduler="wrr"))
    client.add_backend_servers(models.AddBackendServersRequest(
        region_id=region, load_balancer_id=lb.load_balancer_id,
        backend_servers=json.dumps([{"ServerId": ip, "Weight": "100"} for ip in ips])))
    client.create_load_balancer_udplistener(models.CreateLoadBalancerUDPListenerRequest(
        region_id=region, load_balancer_id=lb.load_balancer_id, listener_port=53,
        backend_server_port=5353, bandwidth=-1))
    for port in (80, 53):
        client.start_load_balancer_listener(models.StartLoadBalancerListenerRequest(
            region_id=region, load_balancer_id=lb.load_balancer_id, listener_port=port))
    # The listener is running once the data plane has applied it (B3.3).
    for _ in range(50):
        attr = client.describe_load_balancer_tcplistener_attribute(
            models.DescribeLoadBalancerTCPListenerAttributeRequest(
                region_id=region, load_balancer_id=lb.load_balancer_id, listener_port=80)).body
        if attr.status == "running":
            break
        time.sleep(0.05)
    assert attr.status == "running", attr.status
    assert attr.vserver_group_id == group.vserver_group_id
    got = client.describe_load_balancers(models.DescribeLoadBalancersRequest(region_id=region)).body
    assert any(x.load_balancer_id == lb.load_balancer_id
               for x in got.load_balancers.load_balancer), got
    print(json.dumps({"LoadBalancerId": lb.load_balancer_id, "Address": lb.address}))


if __name__ == "__main__":
    main()
