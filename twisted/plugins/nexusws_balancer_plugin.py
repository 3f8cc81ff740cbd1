from twisted.application.service import ServiceMaker

nexusws_balancer = ServiceMaker(
    "nexusws-balancer", "nexusws.balancer.tap",
    "Session balancer in front of several nexusws nodes (Webots session server compatible)",
    "nexusws-balancer")
