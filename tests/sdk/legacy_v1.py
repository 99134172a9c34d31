"""Drives slb's API with the older Alibaba Cloud SDK (aliyun-python-sdk-slb on
aliyun-python-sdk-core, signature 1.0 HMAC-SHA1). Same arguments and output as official_v3.py.
"""
import json
import os
import sys
import time

from aliyunsdkcore.client import AcsClient
from aliyunsdkslb.request.v20140515 import (
    AddBackendServersRequest, CreateLoadBalancerRequest, CreateLoadBalancerTCPListenerRequest,
    CreateLoadBalancerUDPListenerRequest, CreateVServerGroupRequest, DeleteLoadBalancerRequest,
    DescribeLoadBalancerTCPListenerAttributeRequest, StartLoadBalancerListenerRequest)


def main():
    endpoint, key_id, secret, region, backends = sys.argv[1:6]
    client = AcsClient(key_id, secret, region)

    def call(request, **params):
        request.set_endpoint(endpoint)
        request.set_protocol_type("http")
        for name, value in params.items():
            getattr(request, "set_" + name)(value)
        return json.loads(client.do_action_with_exception(request))

    if os.environ.get("DELETE"):
        call(DeleteLoadBalancerRequest.DeleteLoadBalancerRequest(),
             LoadBalancerId=os.environ["DELETE"])
        print(json.dumps({"deleted": os.environ["DELETE"]}))
        return
    lb = call(CreateLoadBalancerRequest.CreateLoadBalancerRequest(), LoadBalancerName="sdk-v1")
    lb_id = lb["LoadBalancerId"]
    ips = backends.split(",")
    group = call(CreateVServerGroupRequest.CreateVServerGroupRequest(), LoadBalancerId=lb_id,
                 VServerGroupName="web",
                 BackendServers=json.dumps([{"ServerId": ip, "Port": 8080, "Weight": 100} for ip in ips]))
    call(CreateLoadBalancerTCPListenerRequest.CreateLoadBalancerTCPListenerRequest(),
         LoadBalancerId=lb_id, ListenerPort=80, Bandwidth=-1, VServerGroupId=group["VServerGroupId"])
    call(AddBackendServersRequest.AddBackendServersRequest(), LoadBalancerId=lb_id,
         BackendServers=json.dumps([{"ServerId": ip, "Weight": "100"} for ip in ips]))
    call(CreateLoadBalancerUDPListenerRequest.CreateLoadBalancerUDPListenerRequest(),
         LoadBalancerId=lb_id, ListenerPort=53, BackendServerPort=5353, Bandwidth=-1)
    for port in (80, 53):
        call(StartLoadBalancerListenerRequest.StartLoadBalancerListenerRequest(),
             LoadBalancerId=lb_id, ListenerPort=port)
    for _ in range(50):
        attr = call(DescribeLoadBalancerTCPListenerAttributeRequest.DescribeLoadBalancerTCPListenerAttributeRequest(),
                    LoadBalancerId=lb_id, ListenerPort=80)
        if attr["Status"] == "running":
            break
        time.sleep(0.05)
    assert attr["Status"] == "running", attr
    print(json.dumps({"LoadBalancerId": lb_id, "Address": lb["Address"]}))


if __name__ == "__main__":
    main()
