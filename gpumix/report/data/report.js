// gpumix report: hovering a service (legend key or table row) dims every other service's memory segments.
(function () {
  "use strict";
  var plan = JSON.parse(document.getElementById("gpumix-plan").textContent);
  document.body.setAttribute("data-services", String(plan.services.length));
  document.body.setAttribute("data-cards", String(plan.devices.length));
  var segs = document.querySelectorAll("svg .seg[data-service]");
  function highlight(name) {
    for (var i = 0; i < segs.length; i++) {
      segs[i].classList.toggle("dim", name !== null && segs[i].getAttribute("data-service") !== name);
    }
  }
  var hosts = document.querySelectorAll(".key[data-service], tr[data-service]");
  for (var i = 0; i < hosts.length; i++) {
    hosts[i].addEventListener("mouseenter", function (e) { highlight(e.currentTarget.getAttribute("data-service")); });
    hosts[i].addEventListener("mouseleave", function () { highlight(null); });
  }
  document.body.setAttribute("data-ready", "true");
})();
