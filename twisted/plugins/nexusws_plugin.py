from twisted.application.service import ServiceMaker

nexusws = ServiceMaker("nexusws", "nexusws.tap", "WebSocket gateway (Nexus websocketserver compatible)", "nexusws")
